from emeterai_shared.runtime import main

from order_service.bootstrap import SERVICE

raise SystemExit(main(SERVICE))

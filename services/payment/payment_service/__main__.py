from emeterai_shared.runtime import main

from payment_service.bootstrap import SERVICE

raise SystemExit(main(SERVICE))

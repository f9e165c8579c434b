from emeterai_shared.runtime import main

from stamping_service.bootstrap import SERVICE

raise SystemExit(main(SERVICE))

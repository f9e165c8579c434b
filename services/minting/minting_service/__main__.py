from emeterai_shared.runtime import main

from minting_service.bootstrap import SERVICE

raise SystemExit(main(SERVICE))

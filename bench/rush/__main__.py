from bench.rush.main import main

raise SystemExit(main())

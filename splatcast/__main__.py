from splatcast.cli import main

raise SystemExit(main())

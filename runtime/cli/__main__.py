from dtxn.runtime.cli import main

raise SystemExit(main())

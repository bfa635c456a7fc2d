from emovlm_kd.apps.cli import main

raise SystemExit(main())

"""``python -m firmware_sim``: see firmware_sim.runner."""

from firmware_sim.runner import main

raise SystemExit(main())

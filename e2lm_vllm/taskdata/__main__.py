import sys

from e2lm_vllm.taskdata.cli import main

sys.exit(main())

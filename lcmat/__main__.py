"""`python -m lcmat ...`; also the module torchrun runs: `torchrun --nproc-per-node N -m lcmat select ...`."""
import sys

from .cli import main

sys.exit(main())

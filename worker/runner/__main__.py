import os
import sys

from .process import main

code = main(sys.argv[1])
sys.stderr.flush()
os._exit(code)  # not sys.exit: the command thread may be blocked reading stdin

"""Print the worst VJP-vs-finite-difference relative error per op.

Runs the per-op test table (tests/autodiff/test_rules_fd.py: every backward rule on small random
graphs, float64 where onnxruntime has float64 kernels) and prints the table its last test reports.

Usage:  python benchmarks/vjp_errors.py
"""

import os
import subprocess
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.path.join(root, "tests", "autodiff")]))
sys.exit(subprocess.call([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                          os.path.join(root, "tests", "autodiff", "test_rules_fd.py")], cwd=root, env=env))

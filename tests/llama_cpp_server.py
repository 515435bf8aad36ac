"""``python -m llama_cpp.server``, its models loaded as botkit loads them: run as a script with the server's flags.

On a llama.cpp built with AMX, botkit loads weights without extra buffer types
(``botkit.backends.llamacpp_model.repacking_is_safe``): llama.cpp 0.3.36's AMX kernels
die with SIGILL on some machines. The server's own ``Llama`` would reach them.
"""

import runpy
import sys

import llama_cpp.llama_cpp as bindings

from botkit.backends.llamacpp_model import model_params

bindings.llama_model_default_params = model_params
sys.argv[0] = "llama_cpp.server"
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)

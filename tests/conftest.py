import os

# Local Ray stays on loopback (see NOTES-cpu-stack.md); must be set before Ray starts.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

"""The one NeMo action every railstack flow calls: run the named rails in cost order."""

from railstack.nemo.action import railstack_rails as _railstack_rails
from railstack.nemo.compat import action

# A system action: NeMo leaves its calls and results out of the conversation history it writes
# into the main model's prompt outside passthrough mode (the dialog path, configs/rag).
railstack_rails = action(is_system_action=True, name="railstack_rails")(_railstack_rails)

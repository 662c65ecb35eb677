"""The one NeMo action every railstack flow calls: run the named rails in cost order."""

from railstack.nemo.action import railstack_rails as _railstack_rails
from railstack.nemo.compat import action

railstack_rails = action(name="railstack_rails")(_railstack_rails)

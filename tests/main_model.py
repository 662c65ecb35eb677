"""The loopback main model the tests run against (``railstack.tools.loopback``), under the tests' name.

    python tests/main_model.py [PORT] [--latency S] [--token-delay S]
"""

from railstack.tools.loopback import LoopbackModel as MainModelDouble, main, start_loopback

__all__ = ["MainModelDouble", "start_loopback"]

if __name__ == "__main__":
    main()

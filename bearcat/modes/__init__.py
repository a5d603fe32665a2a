"""Recognition modes. Each is a `Mode`: encode labels, build the head on backbone
features, loss, and decode predictions to {"result", "confidence"}."""
from bearcat.modes.base import Mode, build_mode

__all__ = ["Mode", "build_mode"]

"""streamgw: a real-time video streaming gateway for the Livepeer network."""

from streamgw.errors import StreamgwError
from streamgw.segment import Segment

__version__ = "0.1.0"

__all__ = ["Segment", "StreamgwError", "__version__"]

"""A host whose wall clock is off: on PYTHONPATH, a process started with
VCM_TEST_CLOCK_OFFSET=<seconds> reads time.time() (and time_ns) that many seconds ahead
(behind, when negative). Monotonic clocks are left alone, as NTP leaves them."""

import os
import time

_offset = float(os.environ.get("VCM_TEST_CLOCK_OFFSET", "0") or 0)
if _offset:
    _time, _time_ns = time.time, time.time_ns
    time.time = lambda: _time() + _offset
    time.time_ns = lambda: _time_ns() + int(_offset * 1e9)

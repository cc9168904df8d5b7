"""The analytic cost model that ranks candidates without a GPU.

`CostModel` prices a μGraph on a `Device` (device-memory bytes, FLOPs, launches, shared
memory) as a `Cost`; `thread_fusion` fuses element-wise chains at thread level first.
Measured costs plug in through the model's hook.
"""

from jgraph.superopt._cost import Cost as Cost
from jgraph.superopt._cost import CostModel as CostModel
from jgraph.superopt._cost import Device as Device
from jgraph.superopt._cost import thread_fusion as thread_fusion

__all__ = [
    "Cost",
    "CostModel",
    "Device",
    "thread_fusion",
]

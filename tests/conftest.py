import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Tiny test models gain nothing from intra-op threads; a second thread only adds contention.
torch.set_num_threads(1)

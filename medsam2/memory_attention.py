"""SAM 2's memory attention with its memory tokens normalised: for models trained from scratch here.

SAM 2's `MemoryAttention` LayerNorms the current frame's features but not the memories it attends
to: keys and values are the memory encoder's output (and the object pointers) at whatever scale they
have. Trained from random weights on a CPU budget (the demo model), that scale runs away: memory
features went from std 0.3 to 9.6 in 200 steps and 16.7 by step 1500, the cross-attention logits to
a std of 23-60, and the attention became one-hot (normalised entropy 0.05: every query on the same
key, or all of them on the object pointers), so its gradient vanished and the model never learned
to look where the remembered structure was (`medsam2.training.diagnostics.memory_attention_stats`
measures all of this). Normalising each memory token over its channels (a LayerNorm without
parameters) keeps keys at the scale of their positional encodings.

It adds no parameters, so SAM 2 checkpoints fit it, but it computes something else than stock SAM 2:
only the project's own configs (sam2.1_hiera_nano, the demo model's) use it; Meta's SAM 2.1 and the
MedSAM-2 checkpoints run with stock `MemoryAttention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sam2.modeling.memory_attention import MemoryAttention


class NormalizedMemoryAttention(MemoryAttention):
    """`MemoryAttention` over spatial memories normalised per token; with `attend_to_pointers=False`
    the object pointers are left out of the memory (they are still computed and stored)."""

    def __init__(self, *args, attend_to_pointers: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.attend_to_pointers = bool(attend_to_pointers)

    def forward(self, curr, memory: torch.Tensor, curr_pos=None, memory_pos=None, num_obj_ptr_tokens: int = 0):
        spatial = memory.shape[0] - num_obj_ptr_tokens  # memory is (tokens, batch, channels), pointers last
        if not self.attend_to_pointers:
            memory, memory_pos, num_obj_ptr_tokens = memory[:spatial], memory_pos[:spatial], 0
        memory = torch.cat([F.layer_norm(memory[:spatial], memory.shape[-1:]), memory[spatial:]], dim=0)
        return super().forward(curr=curr, memory=memory, curr_pos=curr_pos, memory_pos=memory_pos,
                               num_obj_ptr_tokens=num_obj_ptr_tokens)

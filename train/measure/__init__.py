"""Measurement: the profiling harness (bench), loop-aware FLOP counts (flops), and the other
libraries' layers that the speed studies time ours against (recurrent_layers)."""

"""vlmrl: Qwen3-VL reinforcement learning in JAX, watched live in a terminal."""

"""What the trainers are given beside their data: defaults, checkpoints, logs, the reward model's and the RL trainers'
setup, the RL reward, guards and the gold/proxy monitor."""

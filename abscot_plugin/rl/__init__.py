"""The RL stage's machinery outside the trainer: sampled two-stage rollouts, the vLLM rollout server and its
client, the per-step weight sync, rewards, RL prompts and the LLM judge. Imports no axolotl."""

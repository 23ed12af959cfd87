"""Δ-IRIS (Micheli, Alonso, Fleuret, ICML 2024): a world model that tokenises *transitions* into a few
Δ-tokens with a context-aware tokenizer, predicts them with an autoregressive transformer whose
blocks also hold a continuous embedding of the current frame (the I-token), and trains a
CNN-LSTM actor-critic in its imagination; the paper, the official code and every deviation are in
the docstring of `agents.delta_iris.agent`."""

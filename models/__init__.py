"""Recipes that build the real and synthetic test/benchmark models, and their evaluators.

Import with the repository root on ``sys.path`` (``import models.minilm``). Nothing here is
imported eagerly: torch/transformers are needed only to *build* the real models
(``pip install -e .[models]``); evaluation needs onnxruntime, numpy and tokenizers.

- ``models.cache``: cache folder, corpus folder, wheel download/unzip, atomic writes.
- ``models.minilm``: all-MiniLM-L6-v2 sentence embeddings.
- ``models.smollm2``: SmolLM2-135M-Instruct logits-only causal LM.
- ``models.perplexity``: sliding-window perplexity with ONNX Runtime.
- ``models.synthetic``: ResNet-50-like CNN, MatMul stacks (> 2 GB, streamed), LLaMA MLP.
- ``manifest.toml``: the real models, their packages, licences and ONNX hashes.
"""

"""Using a trained model outside training: ONNX export, an ONNX Runtime backend, and a web page.

- ``onnx_backend``: the metadata an exported file carries, and ``OnnxPredictor`` (ONNX Runtime,
  CPU), a drop-in for ``inference.Predictor`` in every job of ``inference``;
- ``export``: a checkpoint's network to ONNX bytes, checked, with its parity against PyTorch;
- ``backends``: ``load_predictor`` (``--backend auto|torch|onnx``) for test.py and the app;
- ``uploads``: what the web page accepts from a browser, and why it refused a file;
- ``web``: the Gradio page of ``app.py``.
"""

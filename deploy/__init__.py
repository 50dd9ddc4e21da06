"""Using a trained model outside training: ONNX export, an ONNX Runtime backend, and a web page.

- ``onnx_backend``: the metadata an exported file carries, and ``OnnxPredictor`` (ONNX Runtime,
  CPU), a drop-in for ``inference.Predictor`` in every job of ``evaluation.evaluate``;
- ``openvino_backend``: ``OpenVinoPredictor``, the same files on OpenVINO (CPU);
- ``onnx_export``: a checkpoint's network to ONNX bytes, checked, with its parity against PyTorch;
- ``quantize``: static INT8 of those bytes, and the decision check that admits it (``export.py --int8``);
- ``backends``: ``load_predictor`` (``--backend auto|torch|onnx|openvino``) for test.py and the app;
- ``model_file``: a checkpoint, an ``.onnx`` or an ``ensemble.json`` loaded as one predictor (``load_model_file``);
- ``uploads``: what the web page accepts from a browser, and why it refused a file;
- ``web``: the Gradio page of ``app.py``.

Importing this package turns ONNX Runtime's telemetry off (``ORT_DISABLE_TELEMETRY=1``, unless the
environment already sets it): its Linux wheels upload usage events to Microsoft by default and keep
a ``.ses`` file in the temporary folder, which a tool for offline field stations should not do.
"""
import os

# Before any submodule imports onnxruntime: the opt-out is read once, when it initialises.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

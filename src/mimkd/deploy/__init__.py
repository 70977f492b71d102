"""Ship the student: export it, run any exported file, ask it about pictures.

- `card`: the metadata every export carries (architecture, classes, input, mean/std, accuracy).
- `export`: ONNX (optionally int8), safetensors and `.pt2`, each checked after writing.
- `runtime`: open any model file (checkpoint, weights, ONNX, `.pt2`) as one `Runner`.
- `preprocess`: a picture file -> exactly the tensor evaluation feeds the model.
- `predict` / `evaluate`: `mimkd predict` and `mimkd eval`.

This package sits above the engine (it reuses the trainer's metrics); nothing below imports it.
"""

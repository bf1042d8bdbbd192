"""`cmvl serve`: a trained model (a checkpoint, or a `cmvl export format=onnx` folder) behind an HTTP API that answers
exactly what `cmvl predict` answers, with dynamic batching, limits on every input and Prometheus metrics.

    app = create_app(TorchModel.open(Path("best.ckpt")), ServeSettings())   # cmvl.serve.app, cmvl.serve.torch_model

The parts: `app` (routes, errors, the bearer token), `batching` (the bounded queue and the worker thread that
batches requests), `limits` (body, pixels, text, queue), `requests` (a JSON or multipart body → a checked request),
`metrics` (Prometheus), `torch_model` and `onnx_model` (the two backends).
"""

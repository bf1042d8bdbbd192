"""`cmvl compress`: int8 quantisation (torchao; ONNX Runtime's static quantiser for `int8_static`) and pruning
(unstructured magnitude, or structured: attention heads and MLP channels really removed) of a trained run, measured
side by side with the original in one report (`cmvl.compress.report`). What a compressed checkpoint's model is
made of, for restoring it, is `cmvl.models.compression`."""

"""Image generators conditioned on text tokens (`generator=`, cmvl/conf/generator/): the parts of the `generator`
model family that turn a caption's tokens into an image."""

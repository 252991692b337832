"""Image builds from a Dockerfile: parser, build context, layer cache and the builder.

The parser (`dockerfile`, `words`) and `.dockerignore` matching (`ignore`) are
pure logic that the native CLI shares; the builder runs every RUN as a
container of this engine.
"""

"""The exporters: one module per deployment, each assembling a file format (formats/) with the runtimes
that run it (runtimes/), registered under its deployment name with `@EXPORTERS.register`. Importing this
package registers them all."""

from deepshrink.export.exporters import dsparse, dsq, dsz, floating, int8

__all__ = ["dsparse", "dsq", "dsz", "floating", "int8"]

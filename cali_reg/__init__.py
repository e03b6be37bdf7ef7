"""cali-reg: a linear model of California house values, quantised to a few bits.

The package holds everything but the DVC stages: the data schema and CSV I/O
(``data``), params validation (``params``), fitting (``train``), choosing the
quantised codes (``quantize``), the model files and inference (``model``),
scoring (``evaluate``, ``sweep``) and the ``cali-reg`` command (``cli``,
``predict``). What serving needs (``model``, ``predict``, ``data``) imports
numpy alone; scikit-learn, joblib and PyYAML are imported only where a pipeline
step uses them.
"""

__version__ = "0.2.0"

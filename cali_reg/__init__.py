"""cali-reg: a linear model of California house values, quantised to a few bytes.

The package holds everything but the DVC stages: the data schema and CSV I/O
(``data``), params validation (``params``), fitting (``train``), the quantised
formats (``formats``, one module each: byte layout, encoder, decoder), the exact
code searches their encoders share (``lattice``), choosing the format and width
(``quantize``), the model files and inference (``model``), scoring
(``evaluate``, ``sweep``, ``robustness``), the ``cali-reg`` command (``cli``,
``predict``, ``serve``, ``plots``), one-line errors (``errors``) and atomic
writes (``files``). What serving needs (``model``, ``formats``, ``lattice``,
``predict``, ``data``) imports numpy alone; scikit-learn, joblib and PyYAML are
imported only where a pipeline step uses them.
"""

__version__ = "0.2.0"

"""The public verbs (SPEC §10), one per CLI command of the same name; the CLI (cli.py, cli_search.py) only
parses its arguments and calls these, so every default is the one written here.

- `train`, `compress`, `load_model` (model.py): `deepshrink train`, `compress`, `load-model`;
- `bench` (artifact.py; `measure` is the same verb): `deepshrink bench`;
- `mcu` (microcontroller.py): `deepshrink mcu`;
- `study`, `report`, `show`, `recipes`, `data_where`, `data_verify`, `data_download` (runs.py): `deepshrink
  study`, `report`, `show`, `recipes`, `data where`, `data verify`, `data download`;
- `search`, `sensitivity` (searches.py): `deepshrink search`, `sensitivity`.

`load_data` and `create_model` build the inputs of these. Each verb writes the same run-directory files its
command does and returns what it measured; errors in what the caller passes raise `UserError` with the
command's one-line message.
"""

from deepshrink.api.artifact import bench, measure
from deepshrink.api.microcontroller import McuBuild, mcu
from deepshrink.api.model import RUNS, Result, compress, load_data, load_model, train
from deepshrink.api.runs import data_download, data_verify, data_where, recipes, report, show, study
from deepshrink.api.searches import search, sensitivity

__all__ = ["RUNS", "McuBuild", "Result", "bench", "compress", "data_download", "data_verify", "data_where",
           "load_data", "load_model", "mcu", "measure", "recipes", "report", "search", "sensitivity", "show",
           "study", "train"]

"""SSL methods as plug-ins: one file per method family, one `register` line each (registry.py).

| name          | family | positives                                  | geo head |
|---------------|--------|--------------------------------------------|----------|
| moco          | MoCo-v2| two augmentations of one view              | no       |
| moco+tp       | MoCo-v2| two dates of one location (temporal pair)  | no       |
| moco+geo      | MoCo-v2| two augmentations of one view              | yes      |
| moco+geo+tp   | MoCo-v2| two dates of one location                  | yes      |
| simclr(+tp)   | SimCLR | as moco(+tp), in-batch negatives           | no       |
| byol(+tp)     | BYOL   | as moco(+tp), no negatives (EMA target)    | no       |
"""

from geo_ssl.training.methods.base import Method, MethodFamily
from geo_ssl.training.methods.registry import families, get_method, load_plugins, method_names, register

__all__ = ["Method", "MethodFamily", "families", "get_method", "load_plugins", "method_names", "register"]

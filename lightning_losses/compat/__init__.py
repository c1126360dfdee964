"""Other frameworks' dialects: NetsPresso Trainer 1.4.1's ``criterion`` names and ``model.losses`` lists.

Importing this package registers NetsPresso's ``criterion`` dialect with :func:`~lightning_losses.build_loss`.
"""

from lightning_losses.compat import netspresso

__all__ = ["netspresso"]

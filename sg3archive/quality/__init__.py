"""The quality contract (what an archive promises about every image at its original size) and how
each image's representation is chosen to meet it with the fewest bytes."""

from sg3archive.quality.contract import (
    CONTRACTS,
    DEFAULT_CONTRACT,
    NOT_BUILT,
    REPRESENTATIONS,
    QualityContract,
    Representation,
    check_representations,
    contract_of,
    named_contract,
)

__all__ = ["CONTRACTS", "DEFAULT_CONTRACT", "NOT_BUILT", "REPRESENTATIONS", "QualityContract", "Representation",
           "check_representations", "contract_of", "named_contract"]

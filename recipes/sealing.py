"""Recipe parameters declared secret (`secret = true`): encrypted at rest, never shown.

An install keeps its parameter values (`Installation.recipe_params`); a secret one is kept as
`{"encrypted": <Fernet token of panel/crypto.py>}`, so the stored value says itself that it is
sealed, whatever the recipe declares later. It is opened only to write the recipe's runner
into the install config the guest fetches once; the API and the UI say only whether it is set.
"""

from panel.crypto import decrypt, encrypt

SEALED = "encrypted"


def is_sealed(value) -> bool:
    return isinstance(value, dict) and set(value) == {SEALED}


def seal(recipe, values: dict[str, str]) -> dict:
    """The values to store: the recipe's secret ones encrypted."""
    secret = recipe.secret_names if recipe is not None else set()
    return {name: {SEALED: encrypt(value)} if name in secret else value for name, value in values.items()}


def unseal(stored: dict) -> dict[str, str]:
    """The values to run the recipe with (the secret ones decrypted)."""
    return {name: decrypt(value[SEALED]) if is_sealed(value) else value for name, value in stored.items()}


def shown(stored: dict, recipe=None) -> tuple[dict[str, str], dict[str, bool]]:
    """What may be shown of stored values: (the plain values, {secret name: set or not}). A
    value stored before its parameter was declared secret is hidden too."""
    secret = recipe.secret_names if recipe is not None else set()
    values, secrets = {}, {}
    for name, value in stored.items():
        if is_sealed(value):
            secrets[name] = bool(value[SEALED])
        elif name in secret:
            secrets[name] = bool(value)
        else:
            values[name] = value
    return values, secrets

"""Users: register, change e-mail, deactivate.

Rules: a user registers once; the e-mail address is unique among active
users, across replicas (a uniqueness claim in the scope ``users.email``);
changing it claims the new address and releases the old; deactivating
releases it; nothing but RegisterUser on a user that does not exist, and no
e-mail change once deactivated.
"""

from domain_plugins.users.domain import EMAIL_SCOPE, plugin, user

__all__ = ["EMAIL_SCOPE", "plugin", "user"]

"""Forms of the web UI. Model validation (validators, Model.clean) runs through ModelForms."""

from django import forms
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from nodes.models import Cluster, Network, Node, Storage
from panel.accounts.models import LANGUAGE_CHOICES, ApiKey, Customer, User
from panel.ipam.models import IpPool
from recipes.models import Recipe, normalize_parameters
from templates_os.models import OsTemplate
from panel.vps.models import Plan, VirtualServer, hostname_validator


class LoginForm(forms.Form):
    username = forms.CharField(label=_("Username"), max_length=150,
                               widget=forms.TextInput(attrs={"autofocus": True, "autocomplete": "username"}))
    password = forms.CharField(label=_("Password"), strip=False,
                               widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}))


class CodeForm(forms.Form):
    code = forms.CharField(
        label=_("Code from your authenticator app"), max_length=10,
        widget=forms.TextInput(attrs={"autofocus": True, "autocomplete": "one-time-code", "inputmode": "numeric",
                                      "pattern": "[0-9 ]*"}),
    )


class DisableTotpForm(CodeForm):
    """Turning the second factor off: a stolen session alone must not be enough."""

    password = forms.CharField(label=_("Password"), strip=False,
                               widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}))
    field_order = ["password", "code"]


class CustomerForm(forms.ModelForm):
    class Meta:
        model = Customer
        fields = ["name", "email", "external_id", "language"]
        labels = {"name": _("Name"), "email": _("Email"), "external_id": _("External ID"),
                  "language": _("Language")}
        help_texts = {"external_id": _("The billing system's identifier of this customer (optional).")}


class UserCreateForm(forms.ModelForm):
    password1 = forms.CharField(label=_("Password"), strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))
    password2 = forms.CharField(label=_("Password again"), strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))

    class Meta:
        model = User
        fields = ["username", "email", "first_name", "last_name", "role", "customer", "language"]
        labels = {"username": _("Username"), "email": _("Email"), "first_name": _("First name"),
                  "last_name": _("Last name"), "role": _("Role"), "customer": _("Customer"),
                  "language": _("Language")}
        help_texts = {"username": _("Letters, digits and @/./+/-/_ only."),
                      "customer": _("Required for a customer's user; empty for a provider admin.")}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["customer"].empty_label = _("(none)")
        self.fields["language"].choices = [("", _("(the customer's language)")), *LANGUAGE_CHOICES]

    def clean(self):
        cleaned = super().clean()
        p1, p2 = cleaned.get("password1"), cleaned.get("password2")
        if p1 and p2 and p1 != p2:
            self.add_error("password2", _("The two passwords differ."))
        elif p1:
            user = User(username=cleaned.get("username", ""), email=cleaned.get("email", ""))
            try:
                validate_password(p1, user)
            except ValidationError as exc:
                self.add_error("password1", exc)
        return cleaned

    def save(self, commit=True):
        user = super().save(commit=False)
        user.set_password(self.cleaned_data["password1"])
        if commit:
            user.save()
        return user


class PlanForm(forms.ModelForm):
    # Optional here (a form posted without it keeps 0, "unchanged").
    throttled_mbit = forms.IntegerField(min_value=0, max_value=1_000_000, required=False, initial=0,
                                        label=_("Bandwidth after the traffic quota (Mbit/s)"),
                                        help_text=_("0 = unchanged"))

    # The image allowances are optional too: a form posted without them gives none.
    snapshots = forms.IntegerField(min_value=0, max_value=100, required=False, initial=0, label=_("Snapshots"))
    data_disks = forms.IntegerField(min_value=0, max_value=16, required=False, initial=0, label=_("Data disks"))
    data_disk_gib = forms.IntegerField(min_value=0, max_value=65536, required=False, initial=0,
                                       label=_("Data disks in all (GiB)"))

    def clean_throttled_mbit(self):
        return self.cleaned_data.get("throttled_mbit") or 0

    def clean_snapshots(self):
        return self.cleaned_data.get("snapshots") or 0

    def clean_data_disks(self):
        return self.cleaned_data.get("data_disks") or 0

    def clean_data_disk_gib(self):
        return self.cleaned_data.get("data_disk_gib") or 0

    class Meta:
        model = Plan
        fields = ["name", "vcpus", "ram_mib", "disk_gib", "traffic_gib", "bandwidth_mbit", "ipv4_count",
                  "ipv6_count", "backups", "throttled_mbit", "snapshots", "snapshot_memory", "data_disks",
                  "data_disk_gib", "clones"]
        labels = {"name": _("Name"), "vcpus": _("vCPUs"), "ram_mib": _("RAM (MiB)"), "disk_gib": _("Disk (GiB)"),
                  "traffic_gib": _("Traffic (GiB per month)"), "bandwidth_mbit": _("Bandwidth (Mbit/s)"),
                  "ipv4_count": _("IPv4 addresses"), "ipv6_count": _("IPv6 addresses"), "backups": _("Backups"),
                  "snapshot_memory": _("Snapshots with memory"), "clones": _("Customers may clone")}


# --- What an install installs: template, recipe, root password, SSH keys ----------------------

class RecipeChoiceField(forms.ModelChoiceField):
    """Enabled recipes, each with the OS families it fits (lifecycle checks the fit)."""

    def label_from_instance(self, recipe) -> str:
        return f"{recipe.name} ({', '.join(recipe.os_families)})"


def offered_recipes():
    """Enabled recipes that fit at least one offered template's family."""
    families = set(OsTemplate.offered_objects.values_list("family", flat=True))
    ids = [r.pk for r in Recipe.objects.filter(enabled=True) if families & set(r.os_families)]
    return Recipe.objects.filter(pk__in=ids).order_by("name")


class InstallChoiceForm(forms.Form):
    """The fields a create and a reinstall share; lifecycle.check_install validates them for real
    (its refusals land on these fields by name)."""

    os_template = forms.ModelChoiceField(label=_("Operating system"), queryset=OsTemplate.offered_objects.all(),
                                         to_field_name="slug")
    recipe = RecipeChoiceField(label=_("Recipe"), queryset=Recipe.objects.none(), required=False,
                               help_text=_("Optional: a script run once the system is installed. It must fit the "
                                           "operating system's family (in brackets)."))
    recipe_params = forms.CharField(
        label=_("Recipe parameters"), required=False,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "class": "mono", "placeholder": "name=value"}),
        help_text=_("One name=value per line; parameters left out take their defaults."))
    password = forms.CharField(
        label=_("Root password"), required=False, strip=False, max_length=128,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=_("8 to 128 characters. Leave empty to have one generated; it is shown once."))
    ssh_keys = forms.CharField(
        label=_("SSH keys"), required=False,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "class": "mono",
                                     "placeholder": "ssh-ed25519 AAAA… user@host"}),
        help_text=_("OpenSSH public keys for root, one per line."))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["recipe"].queryset = offered_recipes()
        self.fields["recipe"].empty_label = _("(none)")

    def clean_recipe_params(self) -> dict:
        params, errors = {}, []
        for number, line in enumerate(self.cleaned_data["recipe_params"].splitlines(), 1):
            if not line.strip():
                continue
            name, sep, value = line.partition("=")
            name = name.strip()
            if not sep or not name:
                errors.append(_("Line %(n)s: write name=value.") % {"n": number})
            elif name in params:
                errors.append(_("Line %(n)s: %(name)s is given twice.") % {"n": number, "name": name})
            else:
                params[name] = value.strip()
        if errors:
            raise ValidationError(errors)
        return params

    def clean_ssh_keys(self) -> list[str]:
        return [line.strip() for line in self.cleaned_data["ssh_keys"].splitlines() if line.strip()]

    def install_args(self) -> dict:
        """The keyword arguments of lifecycle.create_server / request_reinstall."""
        data = self.cleaned_data
        return {"os_template": data["os_template"], "recipe": data["recipe"],
                "recipe_params": data["recipe_params"], "password": data["password"], "ssh_keys": data["ssh_keys"]}


class ServerCreateForm(InstallChoiceForm):
    # Empty: the provider's own internal customer (Customer.internal_customer), made on first use.
    customer = forms.ModelChoiceField(label=_("Customer"), queryset=Customer.objects.filter(internal=False),
                                      required=False,
                                      help_text=_("Leave at “Our own (internal)” for a server of your own."))
    plan = forms.ModelChoiceField(label=_("Plan"), queryset=Plan.objects.all())
    hostname = forms.CharField(label=_("Hostname"), max_length=253, validators=[hostname_validator])
    node = forms.ModelChoiceField(label=_("Node"), queryset=Node.objects.all(), required=False,
                                  help_text=_("Leave empty to place the server on the online node with the most free RAM."))
    private_network = forms.BooleanField(
        label=_("Also a private network card (NAT)"), required=False,
        help_text=_("A second card on the cluster's private network, with an address of its pool."))

    field_order = ["customer", "plan", "hostname", "os_template", "recipe", "recipe_params", "password", "ssh_keys",
                   "node", "private_network"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["customer"].empty_label = _("Our own (internal)")
        self.fields["node"].empty_label = _("Automatic")


class ReinstallForm(InstallChoiceForm):
    """A reinstall of `server`: the user types its hostname to confirm that the disk is erased."""

    confirm = forms.CharField(label=_("Type the server's hostname to confirm"), max_length=253,
                              widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}))

    def __init__(self, *args, server: VirtualServer, **kwargs):
        self.server = server
        kwargs.setdefault("prefix", "reinstall")
        super().__init__(*args, **kwargs)
        template = server.os_template
        if template is not None and template.offered:
            self.fields["os_template"].initial = template.slug
        self.fields["password"].label = _("New root password")
        self.fields["confirm"].help_text = _("This erases the disk of %(hostname)s.") % {"hostname": server.hostname}

    def clean_confirm(self) -> str:
        value = self.cleaned_data["confirm"].strip()
        if value != self.server.hostname:
            raise ValidationError(_("Type the hostname %(hostname)s exactly, or nothing is reinstalled.")
                                  % {"hostname": self.server.hostname})
        return value


class SuspendForm(forms.Form):
    reason = forms.CharField(label=_("Reason"), max_length=500, required=False)


class ApiKeyForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=100)
    scope = forms.ChoiceField(label=_("Scope"), choices=ApiKey.Scope.choices)
    customer = forms.ModelChoiceField(label=_("Customer"), queryset=Customer.objects.all(), required=False,
                                      help_text=_("Only for keys of the customer scope."))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["customer"].empty_label = _("(none)")

    def clean(self):
        cleaned = super().clean()
        if "scope" in cleaned:
            key = ApiKey(name=cleaned.get("name", ""), scope=cleaned["scope"], customer=cleaned.get("customer"))
            try:
                key.clean()
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    self.add_error(field if field in self.fields else None, errors)
        return cleaned


class CustomerApiKeyForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=100)


# --- Nodes, clusters, storages ---------------------------------------------------------------

class NodeAddForm(forms.Form):
    """The API's NodeCreateSerializer decides what is valid; this form only says it in the UI's words."""

    cluster = forms.ModelChoiceField(label=_("Cluster"), queryset=Cluster.objects.order_by("name"))
    name = forms.CharField(label=_("Name"), max_length=100, required=False,
                           help_text=_("Optional; the address when empty."))
    address = forms.CharField(label=_("Address"), max_length=253, help_text=_("IP address or host name"),
                              widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}))
    ssh_port = forms.IntegerField(label=_("SSH port"), min_value=1, max_value=65535, initial=22)
    ssh_user = forms.CharField(label=_("SSH user"), max_length=32, initial="root",
                               help_text=_("root, or a user with password-less sudo"))
    ssh_password = forms.CharField(label=_("SSH password"), required=False, strip=False,
                                   widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))
    ssh_private_key = forms.CharField(
        label=_("SSH private key"), required=False,
        widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false", "autocomplete": "off",
                                     "placeholder": "-----BEGIN OPENSSH PRIVATE KEY-----"}),
        help_text=_("Give the password or the private key, not both. It is used once, to install the "
                    "panel's own key, and is not kept."),
    )

    # The serializer's messages are the API's (English); these say the same in the UI's language.
    messages_by_field = {
        "name": _("Letters, digits, dots, dashes and underscores, starting with a letter or digit."),
        "address": _("Enter an IP address or a host name."),
        "ssh_user": _("A user name: lowercase letters, digits, “_” and “-”."),
        "ssh_private_key": _("This is not an unencrypted OpenSSH or PEM ed25519, ECDSA or RSA private key."),
    }

    def clean(self):
        from panel.api.serializers import NodeCreateSerializer

        cleaned = super().clean()
        if self.errors:
            return cleaned
        if bool(cleaned.get("ssh_password")) == bool(cleaned.get("ssh_private_key", "").strip()):
            self.add_error("ssh_password", _("Give the SSH password or the private key (one of them)."))
            return cleaned
        data = {key: value for key, value in cleaned.items() if value not in ("", None)}
        data["cluster"] = cleaned["cluster"].pk
        serializer = NodeCreateSerializer(data=data)
        if not serializer.is_valid():
            for field, errors in serializer.errors.items():
                target = field if field in self.fields else None
                self.add_error(target, self.messages_by_field.get(field) or [str(e) for e in errors])
            return cleaned
        validated = dict(serializer.validated_data)
        validated.setdefault("name", "")
        validated.setdefault("ssh_password", "")
        validated.setdefault("ssh_private_key", "")
        return validated


class AcceptHostKeyForm(forms.Form):
    fingerprint = forms.CharField(
        label=_("Offered key's fingerprint, as you checked it on the node"), max_length=120,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false", "placeholder": "SHA256:…"}),
        help_text=_("On the node: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"),
    )

    def clean_fingerprint(self) -> str:
        value = "".join(self.cleaned_data["fingerprint"].split())
        return value if value.startswith("SHA256:") else f"SHA256:{value}"


class ClusterForm(forms.ModelForm):
    class Meta:
        model = Cluster
        fields = ["name", "os_family", "cpu_overcommit", "ram_overcommit"]
        labels = {"name": _("Name"), "os_family": _("OS family of the nodes"),
                  "cpu_overcommit": _("vCPU over-commit"), "ram_overcommit": _("RAM over-commit")}
        help_texts = {"cpu_overcommit": _("vCPUs placed per physical CPU, 1 to 32."),
                      "ram_overcommit": _("RAM placed per MiB of the node's RAM, 1 to 4; 1 means none.")}


class StorageForm(forms.ModelForm):
    """The cluster is the instance's; Storage.clean() checks the kind's fields."""

    class Meta:
        model = Storage
        fields = ["name", "kind", "path", "nfs_source", "volume_group", "holds_templates"]
        labels = {"name": _("Name"), "kind": _("Kind"), "path": _("Path"), "nfs_source": _("NFS source"),
                  "volume_group": _("Volume group"), "holds_templates": _("Holds OS templates")}
        help_texts = {"name": _("Lowercase letters, digits, “_” and “-”; the libvirt pool is panel-NAME."),
                      "path": _("Directory on every node (the mount point, for NFS)."),
                      "nfs_source": _("host:/export, for NFS"),
                      "volume_group": _("For LVM: the volume group on every node."),
                      "holds_templates": _("The OS-template share; new server disks do not go here.")}

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        others = Storage.objects.filter(cluster_id=self.instance.cluster_id, name=name).exclude(pk=self.instance.pk)
        if others.exists():
            raise ValidationError(_("This cluster has a storage of that name."))
        return name


# --- Networks, IP pools, addresses -----------------------------------------------------------

class NetworkForm(forms.ModelForm):
    """The cluster is the instance's; Network.clean() checks the kind's fields."""

    class Meta:
        model = Network
        fields = ["name", "kind", "bridge", "interface", "vlan", "nat_cidr"]
        labels = {"name": _("Name"), "kind": _("Kind"), "bridge": _("Bridge"), "interface": _("Uplink interface"),
                  "vlan": _("VLAN"), "nat_cidr": _("Private range")}
        help_texts = {"name": _("Lowercase letters, digits, “_” and “-”."),
                      "bridge": _("The bridge made on every node, e.g. br-public (at most 15 characters)."),
                      "interface": _("Bridged: the nodes' physical uplink, e.g. eth1."),
                      "vlan": _("Bridged, optional: a VLAN tag (1–4094) on the uplink."),
                      "nat_cidr": _("NAT: the private IPv4 range, e.g. 10.0.0.0/24; the node is its first address.")}

    def _unique_in_cluster(self, field: str, message) -> str:
        value = self.cleaned_data[field]
        others = Network.objects.filter(cluster_id=self.instance.cluster_id, **{field: value}).exclude(pk=self.instance.pk)
        if others.exists():
            raise ValidationError(message)
        return value

    def clean_name(self) -> str:
        return self._unique_in_cluster("name", _("This cluster has a network of that name."))

    def clean_bridge(self) -> str:
        return self._unique_in_cluster("bridge", _("This cluster has a network on that bridge."))


class IpPoolForm(forms.ModelForm):
    """IpPool.clean() checks the subnet, the range, the gateway and overlaps with other pools."""

    class Meta:
        model = IpPool
        fields = ["name", "network", "cidr", "first", "last", "gateway", "dns", "excluded", "assign",
                  "quarantine_minutes"]
        labels = {"name": _("Name"), "network": _("Network"), "cidr": _("Subnet"), "first": _("First address"),
                  "last": _("Last address"), "gateway": _("Gateway"), "dns": _("DNS servers"),
                  "excluded": _("Excluded addresses"), "assign": _("Hand out"),
                  "quarantine_minutes": _("Quarantine (minutes)")}
        help_texts = {"cidr": _("The subnet, e.g. 203.0.113.0/24 or 2001:db8::/48."),
                      "first": _("First address handed out; empty: the subnet's first host."),
                      "last": _("Last address handed out; empty: the subnet's last host."),
                      "gateway": _("Never handed out; servers route through it."),
                      "dns": _("Comma-separated."),
                      "excluded": _("Never handed out; comma- or line-separated."),
                      "quarantine_minutes": _("A released address waits this long before it is handed out again.")}
        widgets = {"excluded": forms.Textarea(attrs={"rows": 3})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["network"].queryset = Network.objects.select_related("cluster").order_by("cluster__name", "name")


class PoolAddressForm(forms.Form):
    """An extra address for a server, from the pool of the page (the server by id or from the list)."""

    server = forms.ModelChoiceField(label=_("Server"), queryset=VirtualServer.objects.none(),
                                    widget=forms.TextInput(attrs={"inputmode": "numeric", "list": "pool-servers",
                                                                  "autocomplete": "off", "size": 8}),
                                    help_text=_("The server's number (#) in the panel."),
                                    error_messages={"invalid_choice": _("No server with that number in this "
                                                                        "pool's cluster.")})
    address = forms.CharField(label=_("Address"), max_length=39, required=False,
                              help_text=_("Optional: this exact address; else the next free one."))

    def __init__(self, *args, pool: IpPool, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["server"].queryset = servers_in_cluster(pool.network.cluster_id)


class ServerAddressForm(forms.Form):
    """An extra address for the server of the page, from a pool of its cluster's networks."""

    pool = forms.ModelChoiceField(label=_("Pool"), queryset=IpPool.objects.none())
    address = forms.CharField(label=_("Address"), max_length=39, required=False,
                              help_text=_("Optional: this exact address; else the next free one."))

    def __init__(self, *args, server: VirtualServer, **kwargs):
        super().__init__(*args, **kwargs)
        cluster_id = server.node.cluster_id if server.node_id else None
        self.fields["pool"].queryset = IpPool.objects.filter(network__cluster_id=cluster_id).select_related(
            "network").order_by("name") if cluster_id else IpPool.objects.none()


class MoveAddressForm(forms.Form):
    server = forms.ModelChoiceField(label=_("Move to server"), queryset=VirtualServer.objects.none(),
                                    widget=forms.TextInput(attrs={"inputmode": "numeric", "list": "pool-servers",
                                                                  "autocomplete": "off", "size": 8}),
                                    error_messages={"invalid_choice": _("No server with that number in this "
                                                                        "pool's cluster.")})

    def __init__(self, *args, cluster_id: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["server"].queryset = servers_in_cluster(cluster_id)


class PtrForm(forms.Form):
    ptr = forms.CharField(label=_("Reverse DNS name"), max_length=253, required=False,
                          validators=[hostname_validator])


def servers_in_cluster(cluster_id):
    return VirtualServer.objects.filter(node__cluster_id=cluster_id).exclude(state="deleting").order_by("id")


# --- OS templates and recipes ----------------------------------------------------------------

class OsTemplateForm(forms.ModelForm):
    """What an admin sets on a template; the rest comes from the share's scan."""

    class Meta:
        model = OsTemplate
        fields = ["enabled", "position"]
        labels = {"enabled": _("Enabled"), "position": _("Position")}


YES = {"yes", "y", "true", "1", "да", "д"}
NO = {"no", "n", "false", "0", "нет", "н", ""}


def parameters_text(parameters: list[dict]) -> str:
    """A recipe's parameters as the form's lines: name | label | yes/no | default, and `| secret`
    for a secret one (an edit in the form keeps it secret)."""
    return "\n".join(" | ".join([p["name"], p.get("label", ""), "yes" if p.get("required") else "no",
                                 p.get("default", ""), *(["secret"] if p.get("secret") else [])]) for p in parameters)


class RecipeForm(forms.ModelForm):
    """Families and parameters are typed as text; Recipe.clean() checks the result."""

    os_families = forms.CharField(
        label=_("OS families"), max_length=500,
        help_text=_("Comma-separated, as in the templates' family, e.g. debian, rhel, ubuntu."))
    parameters = forms.CharField(
        label=_("Parameters"), required=False,
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false", "class": "mono",
                                     "placeholder": "db_name | Database name | no | app"}),
        help_text=_("One per line: name | label | required (yes/no) | default, and | secret for a value that is "
                    "kept encrypted and never shown (no default). The script gets each as an upper-case "
                    "environment variable."))

    class Meta:
        model = Recipe
        fields = ["name", "slug", "description", "os_families", "parameters", "script", "enabled"]
        labels = {"name": _("Name"), "slug": _("Slug"), "description": _("Description"), "script": _("Script"),
                  "enabled": _("Enabled")}
        help_texts = {"slug": _("Letters, digits, “_” and “-”; the API names the recipe by it."),
                      "script": _("Run as root in the installed system; starts with #!/bin/sh or #!/bin/bash."),
                      "enabled": _("Only enabled recipes are offered.")}
        widgets = {"description": forms.Textarea(attrs={"rows": 2}),
                   "script": forms.Textarea(attrs={"rows": 16, "spellcheck": "false", "class": "mono",
                                                   "wrap": "off"})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk and not self.is_bound:
            self.initial["os_families"] = ", ".join(self.instance.os_families)
            self.initial["parameters"] = parameters_text(self.instance.parameters)

    def clean_os_families(self) -> list[str]:
        families = [part.strip() for part in self.cleaned_data["os_families"].split(",") if part.strip()]
        if not families:
            raise ValidationError(_("Give at least one OS family."))
        return list(dict.fromkeys(families))

    def clean_parameters(self) -> list[dict]:
        parameters, errors = [], []
        for number, line in enumerate(self.cleaned_data["parameters"].splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, label, required, default, secret = ([part.strip() for part in line.split("|", 4)] + [""] * 4)[:5]
            if required.lower() not in YES | NO:
                errors.append(_("Line %(n)s: required is yes or no, not “%(value)s”.") % {"n": number, "value": required})
                continue
            if secret.lower() not in YES | NO | {"secret"}:
                errors.append(_("Line %(n)s: the fifth column is secret or empty, not “%(value)s”.")
                              % {"n": number, "value": secret})
                continue
            item = {"name": name, "label": label or name, "required": required.lower() in YES, "default": default,
                    "secret": secret.lower() in YES | {"secret"}}
            try:  # one line at a time, so that the error names its line
                parameters = normalize_parameters([*parameters, item])
            except ValidationError as exc:
                errors += [_("Line %(n)s: %(error)s") % {"n": number, "error": message}
                           for message in exc.message_dict.get("parameters", exc.messages)]
        if errors:
            raise ValidationError(errors)
        return parameters

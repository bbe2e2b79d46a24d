import re

from django.db import migrations, models


def fill_scope_and_strip_bodies(apps, schema_editor):
    Webhook = apps.get_model("webhooks", "Webhook")
    Delivery = apps.get_model("webhooks", "Delivery")
    # Who made an existing provider webhook is not recorded: "billing", the scope with less
    # reach, so it may point at private addresses only when the admin allows billing's too.
    Webhook.objects.filter(customer__isnull=True).update(scope="billing")
    # Receivers' answer bodies are no longer kept: "HTTP 500: <body>" becomes "HTTP 500".
    for row in Delivery.objects.filter(last_error__startswith="HTTP ").only("id", "last_error"):
        status_only = re.match(r"HTTP \d+", row.last_error)
        if status_only and status_only.group(0) != row.last_error:
            Delivery.objects.filter(pk=row.pk).update(last_error=status_only.group(0))


class Migration(migrations.Migration):

    dependencies = [
        ('webhooks', '0001_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name='webhook',
            name='scope',
            field=models.CharField(choices=[('admin', 'Admin'), ('billing', 'Billing'), ('customer', 'Customer')], default='customer', editable=False, max_length=8),
        ),
        migrations.RunPython(fill_scope_and_strip_bodies, migrations.RunPython.noop),
    ]

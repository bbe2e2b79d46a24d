"""The provider admin area's OS templates (from the template share) and post-install recipes."""

from django.conf import settings
from django.contrib import messages
from django.db.models import Count
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from panel.accounts import audit
from panel.ui.forms import OsTemplateForm, RecipeForm
from panel.ui.views.common import actor, admin_only, form_changes, paginate
from recipes.models import Recipe
from templates_os import repository
from templates_os.models import OsTemplate


# --- OS templates ----------------------------------------------------------------------------

@admin_only
def template_list(request):
    templates = OsTemplate.objects.annotate(server_count=Count("servers", distinct=True))
    return render(request, "ui/admin/template_list.html", {
        "templates": templates, "share": settings.TEMPLATE_SHARE,
    })


@admin_only
@require_POST
def template_update(request, template_id: int):
    """Enable or disable a template, or move it in the lists: one form per button."""
    template = get_object_or_404(OsTemplate, pk=template_id)
    data = {"enabled": "true" if template.enabled else "false", "position": template.position}
    data.update({name: request.POST[name] for name in data if name in request.POST})
    form = OsTemplateForm(data, instance=template)
    if not form.is_valid():
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, f"{template.name}: {error}")
    elif form.has_changed():
        form.save()
        audit.record(actor(request), "os_template.update", template, slug=template.slug, **form_changes(form))
        messages.success(request, _("Template “%(name)s” saved.") % {"name": template.name})
    return redirect("ui:admin-templates")


@admin_only
@require_POST
def template_rescan(request):
    templates = repository.scan()
    offered = sum(1 for t in templates if t.offered)
    invalid = sum(1 for t in templates if not t.valid)
    audit.record(actor(request), "os_template.rescan", None, templates=len(templates), offered=offered,
                 invalid=invalid)
    messages.success(request, _("Share scanned: %(total)s templates, %(offered)s offered, %(invalid)s invalid.")
                     % {"total": len(templates), "offered": offered, "invalid": invalid})
    return redirect("ui:admin-templates")


# --- Recipes ---------------------------------------------------------------------------------

@admin_only
def recipe_list(request):
    recipes = Recipe.objects.annotate(install_count=Count("installations")).order_by("name")
    return render(request, "ui/admin/recipe_list.html", {"page": paginate(request, recipes)})


@admin_only
def recipe_create(request):
    form = RecipeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        recipe = form.save()
        audit.record(actor(request), "recipe.create", recipe, slug=recipe.slug)
        messages.success(request, _("Recipe “%(name)s” created.") % {"name": recipe.name})
        return redirect("ui:admin-recipes")
    return render(request, "ui/admin/recipe_form.html", {
        "form": form, "title": _("New recipe"), "back_href": reverse("ui:admin-recipes"), "submit": _("Create recipe"),
    })


@admin_only
def recipe_edit(request, recipe_id: int):
    recipe = get_object_or_404(Recipe, pk=recipe_id)
    form = RecipeForm(request.POST or None, instance=recipe)
    if request.method == "POST" and form.is_valid():
        if form.has_changed():
            form.save()
            changes = form_changes(form)
            if "script" in changes:
                changes["script"] = "(changed)"  # the whole script would swamp the log
            audit.record(actor(request), "recipe.update", recipe, slug=recipe.slug, **changes)
        messages.success(request, _("Recipe “%(name)s” saved.") % {"name": recipe.name})
        return redirect("ui:admin-recipes")
    return render(request, "ui/admin/recipe_form.html", {
        "form": form, "title": _("Edit recipe %(name)s") % {"name": recipe.name}, "recipe": recipe,
        "back_href": reverse("ui:admin-recipes"), "submit": _("Save"),
    })


@admin_only
@require_POST
def recipe_delete(request, recipe_id: int):
    """Past installs keep their record (their recipe becomes empty); the recipe is not offered any more."""
    recipe = get_object_or_404(Recipe, pk=recipe_id)
    audit.record(actor(request), "recipe.delete", recipe, slug=recipe.slug)
    recipe.delete()
    messages.success(request, _("Recipe “%(name)s” deleted.") % {"name": recipe.name})
    return redirect("ui:admin-recipes")

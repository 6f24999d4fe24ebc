# Renders the options of services.countersign as Markdown, from the
# module's own declarations. scripts/gen-options-doc writes the result to
# docs/options.md; the module test checks that the file is current.
{ lib }:

let
  evaluated = lib.evalModules {
    modules = [
      ./tests/stand-ins.nix
      ./module.nix
    ];
  };

  options = lib.filter (option: option.visible && !option.internal) (
    lib.optionAttrSetToDocList evaluated.options.services.countersign
  );

  # Default and example values arrive as literalExpression or literalMD
  # records from optionAttrSetToDocList; plain values are shown as Nix.
  valueText =
    value:
    if builtins.isAttrs value && value ? _type && value ? text then
      value.text
    else
      lib.generators.toPretty { } value;

  codeBlock =
    text:
    if lib.hasInfix "\n" text then
      "\n\n```nix\n${lib.removeSuffix "\n" text}\n```"
    else
      " `${text}`";

  descriptionText =
    option:
    let
      description = option.description or null;
    in
    # Older nixpkgs wraps descriptions in mdDoc records.
    if builtins.isAttrs description then description.text or "" else toString description;

  optionSection =
    option:
    lib.concatStrings (
      [
        "## `${option.name}`\n\n"
        "${lib.trim (descriptionText option)}\n\n"
        "*Type:* ${option.type}\n"
      ]
      ++ lib.optional (option ? default) "\n*Default:*${codeBlock (valueText option.default)}\n"
      ++ lib.optional (option ? example) "\n*Example:*${codeBlock (valueText option.example)}\n"
      ++ lib.optional option.readOnly "\n*Read only.*\n"
    );
in
''
  # NixOS options of `services.countersign`

  This file is generated from `nix/module.nix` by
  `scripts/gen-options-doc`; edit the module, then run the script.

''
+ lib.concatMapStringsSep "\n" optionSection options

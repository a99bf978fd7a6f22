{{- define "splitdnn.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "splitdnn.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "splitdnn.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of the operator's objects; "splitdnn.componentLabels" (dict "ctx" . "component" NAME) those of the
     release's other parts (prometheus, link-probe), and the same pair for selectors. */}}
{{- define "splitdnn.labels" -}}
{{ include "splitdnn.componentLabels" (dict "ctx" . "component" "operator") }}
{{- end }}

{{- define "splitdnn.selectorLabels" -}}
{{ include "splitdnn.componentSelectorLabels" (dict "ctx" . "component" "operator") }}
{{- end }}

{{- define "splitdnn.componentLabels" -}}
helm.sh/chart: {{ include "splitdnn.chart" .ctx }}
{{ include "splitdnn.componentSelectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: splitdnn
{{- end }}

{{- define "splitdnn.componentSelectorLabels" -}}
app.kubernetes.io/name: {{ include "splitdnn.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "splitdnn.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "splitdnn.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "splitdnn.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString (default .Chart.AppVersion .Values.image.tag)) }}
{{- end }}

{{- define "splitdnn.agentImage" -}}
{{- printf "%s:%s" .Values.agent.image.repository (toString (default .Chart.AppVersion .Values.agent.image.tag)) }}
{{- end }}

{{/* The operator's rules: least privilege for what handlers.py and kube.py do. */}}
{{- define "splitdnn.rules" -}}
# watch SplitInferences; kopf keeps its progress in annotations (patch)
- apiGroups: [splitdnn.io]
  resources: [splitinferences]
  verbs: [get, list, watch, patch]
- apiGroups: [splitdnn.io]
  resources: [splitinferences/status]
  verbs: [get, patch, update]
# owner references with blockOwnerDeletion on the children
- apiGroups: [splitdnn.io]
  resources: [splitinferences/finalizers]
  verbs: [update]
# the children, by server-side apply (create + patch); deleting them with their SplitInference is the garbage
# collector's; the operator deletes only an earlier split's Services once its pods are gone
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
# a cooperative tier's device pods (deleted when the tier stops being cooperative)
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, watch, create, patch, delete]
# the cooperative group's key: created once, never read back
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch]
# model Jobs (the artifact store's builds; a failed one is replaced after a pause) and, for planner.mode auto,
# profiling Jobs on each tier's nodes, their pods' logs (the profile document)
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, create, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
# an Event per decision
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}

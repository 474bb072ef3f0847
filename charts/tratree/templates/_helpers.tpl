{{- define "tratree.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tratree.fullname" -}}
{{- if contains (include "tratree.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "tratree.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tratree.labels" -}}
app.kubernetes.io/name: {{ include "tratree.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tratree.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tratree.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "tratree.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tratree.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tratree.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Exactly the API calls the operator makes, and the one permission admission checks (tests/unit/test_chart.py
     compares them with a recorded run; tests/e2e/test_kubernetes.py runs the operator under them on a real apiserver). */}}
{{- define "tratree.rules" -}}
- apiGroups: ["tratree.io"]
  resources: ["w2sgexperiments"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["tratree.io"]
  resources: ["w2sgexperiments/status"]
  verbs: ["patch"]
# not a call: OwnerReferencesPermissionEnforcement admits the Jobs' and ConfigMap's owner references
# (blockOwnerDeletion) only from whoever may update the owner's finalizers
- apiGroups: ["tratree.io"]
  resources: ["w2sgexperiments/finalizers"]
  verbs: ["update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "patch"]
# create: the operator's own Events; list: the Job controller's FailedCreate on a Job that has no Pod
# (the namespace's Pod Security refuses it, say), by the Job's uid
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
# an experiment's store is read with the credentials of its own spec.kubernetes.s3Secret, from
# its own namespace, never with the operator's: get only, by name
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- if .Values.kueue.enabled }}
# why Kueue holds a stage's Job: its Workload's conditions, listed by the Job's uid
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list"]
{{- end }}
{{- end -}}

{{/* Cluster-scoped reads the operator makes in any mode: kopf watches CRDs to learn of resources appearing
     and going, and, serving a list of namespaces, namespaces to match them; the operator watches Nodes. */}}
{{- define "tratree.clusterReadRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
# what nodes there are: a stage asking for more than any node has fails instead of waiting for ever
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list", "watch"]
{{- if .Values.watchNamespaces }}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end -}}

{{- define "tratree.peeringRules" -}}
- apiGroups: ["kopf.dev"]
  resources: [{{ if .Values.watchNamespaces }}"kopfpeerings"{{ else }}"clusterkopfpeerings"{{ end }}]
  verbs: ["list", "watch", "patch"]
{{- end -}}

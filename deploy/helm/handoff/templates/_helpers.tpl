{{/* Chart name, truncated to the 63-character DNS label limit. */}}
{{- define "handoff.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, plus the chart name unless it already holds it. */}}
{{- define "handoff.fullname" -}}
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

{{- define "handoff.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "handoff.instanceLabels" -}}
app.kubernetes.io/name: {{ include "handoff.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every object, without a component. */}}
{{- define "handoff.commonLabels" -}}
helm.sh/chart: {{ include "handoff.chart" . }}
{{ include "handoff.instanceLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: handoff
{{- end }}

{{/* Selects the API server pods only (not the migration Job's pod). */}}
{{- define "handoff.selectorLabels" -}}
{{ include "handoff.instanceLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "handoff.labels" -}}
{{ include "handoff.commonLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "handoff.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "handoff.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image reference: repository@digest when a digest is pinned, else repository:tag. */}}
{{- define "handoff.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "handoff.signingKeysFile" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.auth.signingKeys.mountPath) .Values.auth.signingKeys.secretKey }}
{{- end }}

{{/* Pod-level security context shared by the Deployment and the migration Job. */}}
{{- define "handoff.podSecurityContext" -}}
runAsNonRoot: true
{{- with .Values.podSecurityContext.runAsUser }}
runAsUser: {{ . }}
{{- end }}
{{- with .Values.podSecurityContext.runAsGroup }}
runAsGroup: {{ . }}
{{- end }}
{{- with .Values.podSecurityContext.fsGroup }}
fsGroup: {{ . }}
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container security context: fixed hardening, not configurable on purpose. */}}
{{- define "handoff.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* HANDOFF_DATABASE_URL from the existing Secret (Deployment and migration Job). */}}
{{- define "handoff.databaseEnv" -}}
- name: HANDOFF_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "database.existingSecret is required: a Secret holding the database URL" .Values.database.existingSecret }}
      key: {{ .Values.database.secretKey }}
{{- end }}

{{/* Cross-value checks the JSON schema cannot express. */}}
{{- define "handoff.validate" -}}
{{- if ge (int .Values.preStopSleepSeconds) (int .Values.terminationGracePeriodSeconds) }}
{{- fail "preStopSleepSeconds must be shorter than terminationGracePeriodSeconds" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be at least autoscaling.minReplicas" }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- $cpu := .Values.autoscaling.targetCPUUtilizationPercentage }}
{{- $memory := .Values.autoscaling.targetMemoryUtilizationPercentage }}
{{- if and (kindIs "invalid" $cpu) (kindIs "invalid" $memory) }}
{{- fail "autoscaling needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- if and (not (kindIs "invalid" $cpu)) (not (dig "requests" "cpu" "" .Values.resources)) }}
{{- fail "autoscaling on CPU needs resources.requests.cpu (utilization is measured against it)" }}
{{- end }}
{{- if and (not (kindIs "invalid" $memory)) (not (dig "requests" "memory" "" .Values.resources)) }}
{{- fail "autoscaling on memory needs resources.requests.memory" }}
{{- end }}
{{- end }}
{{- end }}

{{/* IntOrString: integers bare, percentages quoted ("1" as a string is not a valid count). */}}
{{- define "handoff.intOrString" -}}
{{- if kindIs "string" . }}{{ quote . }}{{ else }}{{ int64 . }}{{ end }}
{{- end }}

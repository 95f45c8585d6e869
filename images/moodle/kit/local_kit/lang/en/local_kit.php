<?php
defined('MOODLE_INTERNAL') || die();

$string['pluginname'] = 'Deployment kit';
$string['privacy:metadata'] = 'The deployment kit plugin stores no personal data.';

<?php
// Moodle's security checks (Site administration > Reports > Security checks) as JSON, for
// `kit doctor`. Run by the kit as www-data through `php` on stdin, inside a web container.
// Why not admin/cli/checks.php: it does not load filelib, so core_publicpaths dies with
// 'Class "curl" not found' on a cold cache and the run ends in an exception (exit 1, which
// NRPE reads as a warning). And core_publicpaths fetches wwwroot from inside the container,
// which a site behind NAT or a test name may not reach: its paths go back to the kit, which
// requests them through the site's edge as the public would.
define('CLI_SCRIPT', true);
require('/var/www/moodle/config.php');
require_once($CFG->libdir . '/filelib.php');

$found = [];
foreach (\core\check\manager::get_security_checks() as $check) {
    $row = ['ref' => $check->get_ref(), 'name' => (string) $check->get_name()];
    if ($check instanceof \core\check\environment\publicpaths) {
        $sets = [];
        foreach ($check->get_pathsets() as $set) {
            $sets[] = ['pattern' => $set['pattern'], '404' => array_values($set['404'] ?? []),
                       '200' => array_values($set['200'] ?? [])];
        }
        $row['status'] = 'probe';
        $row['pathsets'] = $sets;
    } else {
        try {
            $result = $check->get_result();
            $row['status'] = $result->get_status();
            $row['summary'] = trim(html_to_text((string) $result->get_summary(), 0, false));
        } catch (\Throwable $e) {
            $row['status'] = 'unknown';
            $row['summary'] = 'the check failed: ' . $e->getMessage();
        }
    }
    $found[] = $row;
}
echo json_encode($found, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE), "\n";

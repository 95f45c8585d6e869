<?php  // Rendered by the kit from site.yaml for site "moodle". Do not edit: run `kit render`.
unset($CFG);
global $CFG;
$CFG = new stdClass();

// Secrets are files the container reads (/run/kit/secrets, mode 0400, www-data's), never this
// file nor the environment: Moodle's Server > PHP info page shows the environment to admins.
if (!function_exists('kit_secret')) {
    function kit_secret(string $name): string {
        $value = @file_get_contents('/run/kit/secrets/' . $name);
        return $value === false ? '' : rtrim($value, "\r\n");
    }
}

$CFG->dbtype    = 'pgsql';
$CFG->dblibrary = 'native';
$CFG->dbhost    = '{{ include "moodle.database.host" . }}';
$CFG->dbname    = 'moodle';
// db_login holds the login role and its password in one file, replaced as one: during
// `kit secrets rotate` a request must never read the new role with the old password.
$kit_db_login = explode("\n", kit_secret('db_login'), 2);
if (count($kit_db_login) === 2) {
    [$CFG->dbuser, $CFG->dbpass] = $kit_db_login;
} else {    // Kubernetes: the Secret volume is swapped whole, its files are read apart
    $CFG->dbuser = kit_secret('db_user') ?: 'moodle';
    $CFG->dbpass = kit_secret('db_password');
}
unset($kit_db_login);
$CFG->prefix    = 'mdl_';
$CFG->dboptions = [
    // Each php-fpm child keeps its connection: no connect, TLS or SCRAM login per request.
    'dbpersist' => true,
    'dbport' => 5432,
    'dbsocket' => '',
    'dbhandlesoptions' => false,
    'ssl' => 'prefer',
];

// One fixed wwwroot for every replica. TLS ends at the Ingress: Moodle trusts it.
$CFG->wwwroot   = 'https://moodle.example.com';
$CFG->sslproxy  = true;
$CFG->admin     = 'admin';

// Shared: dataroot (cachedir, tempdir, backuptempdir live under it). Local per container: localcachedir.
$CFG->dataroot      = '/var/moodledata';
$CFG->localcachedir = '/var/cache/moodle';
$CFG->directorypermissions = 02770;
// Each container lists the plugins of its own code (its image): in the shared cachedir, a
// replica of the previous release rewrote the list without a plugin the new one carries.
$CFG->alternative_component_cache = $CFG->localcachedir . '/core_component.php';
// Moodle's file lock factory (the file cache stores' locks) makes each of its 256 lock
// folders with a bare mkdir() when a lock first needs it: concurrent first requests race and
// one fails with "Unable to acquire a lock for caching" (a fresh replica; and under load
// after a restore purged the shared cache). Create them all, tolerating the race, before any
// request needs one: on the shared volume for Moodle's file store, and in this container for
// the per-container store (kit_local, under localcachedir).
foreach ([$CFG->dataroot . '/cache/cachestore_file/default_application/filelocks', $CFG->localcachedir . '/muc-local/filelocks'] as $kitlocks) {
    if (!is_dir($kitlocks . '/ff')) {
        @mkdir($kitlocks, 02770, true);
        for ($kitlockdir = 0; $kitlockdir < 256; $kitlockdir++) {
            @mkdir(sprintf('%s/%02x', $kitlocks, $kitlockdir), 02770);
        }
    }
}
unset($kitlocks, $kitlockdir);

// Security settings of site.yaml (security:), forced here: the admin UI shows them as fixed.
$CFG->lockoutthreshold = 10;
$CFG->lockoutwindow = 1800;
$CFG->lockoutduration = 1800;
$CFG->passwordpolicy = 1;
$CFG->minpasswordlength = 10;
$CFG->registerauth = '';
$CFG->allowframembedding = 0;
// Cookies: HTTPS-only when the URL is https, never readable by scripts.
$CFG->cookiesecure = true;
$CFG->cookiehttponly = true;

// Code is immutable in the image: no plugin installs or updates from the web UI.
$CFG->disableupdateautodeploy = true;
$CFG->preventexecpath = true;


// Sessions in Redis so any replica serves any user.
$CFG->session_handler_class = '\core\session\redis';
$CFG->session_redis_host = '{{ include "moodle.redis.host" . }}';
$CFG->session_redis_port = 6379;
$CFG->session_redis_auth = kit_secret('redis_password');
$CFG->session_redis_database = 0;
$CFG->session_redis_prefix = 'sess_';
$CFG->session_redis_acquire_lock_timeout = 120;
$CFG->session_redis_acquire_lock_retry = 100;
$CFG->session_redis_lock_expire = 7200;
$CFG->session_redis_serializer_use_igbinary = false;   // switching it breaks every stored session key


// Files from moodledata are sent by nginx (X-Accel-Redirect), not streamed through PHP.
$CFG->xsendfile = 'X-Accel-Redirect';
$CFG->xsendfilealiases = ['/dataroot/' => $CFG->dataroot];

// PostgreSQL advisory locks (sessions reach PostgreSQL directly, no transaction pooler).
$CFG->lock_factory = '\core\lock\postgres_lock_factory';

// Cron runs only from the CLI: the scheduled-task runner and the adhoc-task workers.
$CFG->cronclionly = true;
// The scheduled-task runner leaves queued (adhoc) work to the workers.
// The limit is in the workers' environment, so scaling workers does not roll the web tier.
$CFG->task_adhoc_concurrency_limit = (int) getenv('KIT_ADHOC_CONCURRENCY_LIMIT');

// Moodle's load-test generator creates users with this password (kit loadtest seed).
$CFG->tool_generator_users_password = kit_secret('loadtest_password');

require_once(__DIR__ . '/lib/setup.php');
// There is no php closing tag in this file, it is intentional because it prevents trailing whitespace problems!
